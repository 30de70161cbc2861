"""Parsers (text -> frozen model) and renderers (model -> text) for every VS-Tools file.

This package is the pure bottom layer: it never touches the host beyond reading the file it is
given, and never executes anything it reads (catalogue P6).
"""
