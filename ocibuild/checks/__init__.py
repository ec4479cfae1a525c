"""Build-time checks that the image will start: its native libraries load and its entry script's imports resolve.

Both are decided from files alone: the base image's layers (read as names, plus a few small files), the installed
dependencies folder and the user's source. Nothing from the image is ever loaded or run.
"""
