"""Decoders and task heads (detection, Mask2Former) built on raybench backbones."""
