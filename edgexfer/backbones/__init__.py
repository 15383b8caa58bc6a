"""Pretrained image backbones (see ``registry``)."""
