"""vitprobe.study"""
