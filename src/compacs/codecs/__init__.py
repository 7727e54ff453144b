"""Pixel codecs: the codec table, frame extraction and verified transcoding."""
