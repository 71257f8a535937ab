"""One conversion: a DICOM series (or a plain TIFF) in, a verified TIFF in a temporary file, renamed into place, plus its JSON report."""
