"""vitprobe.report"""
