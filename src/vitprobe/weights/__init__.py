"""vitprobe.weights"""
