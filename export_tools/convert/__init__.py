"""Convert the published ImageNet networks (DeePSiM fc6 generator, CaffeNet, LRCN) into a latent-onnx bundle.

- `caffemodel`: read a Caffe `.caffemodel` without Caffe (a small protobuf wire-format decoder).
- `weights`: load a `.caffemodel` or a PyTorch port's state dict into `export_tools.nets`, checking shapes.
- `download`: fetch the published files into a cache folder (pinned digests, resumable, progress).
- `labels`: ImageNet class names (shipped) and the LRCN vocabulary.
- `imagenet_bundle`: build the networks and write the bundle; `cli`: the `imagenet` commands.
"""
