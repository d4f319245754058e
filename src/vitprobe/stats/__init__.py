"""vitprobe.stats"""
