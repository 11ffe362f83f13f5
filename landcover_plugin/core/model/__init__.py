"""The network and its file: the U-Net, the model file and its metadata, class tables, devices, precision."""
