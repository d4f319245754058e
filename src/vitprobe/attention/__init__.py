"""vitprobe.attention"""
