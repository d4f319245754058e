"""vitprobe.record"""
