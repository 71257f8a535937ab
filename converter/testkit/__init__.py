"""Test and demo support, never on the conversion path: a deterministic generator of synthetic DICOM WSI series."""
