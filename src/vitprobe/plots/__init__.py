"""vitprobe.plots"""
