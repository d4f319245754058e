"""vitprobe.models"""
