"""Frame codecs: JPEG marker parsing (colour space and sampling from the bitstream) and decoding/encoding of frames through imagecodecs."""
