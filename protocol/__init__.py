"""The PainAR wire format: typed frames, codec, error and close codes.

Pure: nothing here performs I/O, touches asyncio or reads settings.
"""
