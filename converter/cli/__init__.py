"""Entry points of the converter package: `wsi-node convert`, `batch-converter`, `wsi-node demo`, and log set-up shared with `wsi-node serve`."""
