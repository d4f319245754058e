"""vitprobe.data"""
