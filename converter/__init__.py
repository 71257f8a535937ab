"""Everything from "files in the inbox" to "TIFF in serving".

The subpackages follow the path a slide takes:

    inbox/       scan the inbox, track series until complete, keep state (SQLite)
    source/      read the DICOM series: instances, levels, frame and tile indexes
    codecs/      decode/encode frames, read colour facts from the bitstream
    tiff/        plan the TIFF layout, build the pyramid, write tiles, verify
    conversion/  run one conversion into a temporary file and publish it
    executors/   where conversions run (process pool)
    cli/         `wsi-node convert`, `batch-converter`, `wsi-node demo`
    testkit/     synthetic DICOM WSI series for tests and demos

durable.py holds the file operations everything relies on (fsync, atomic
rename, durable move) and errors.py the converter's exception classes.
"""
