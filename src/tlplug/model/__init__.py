"""The model a run trains: backbones, the transfer model, adapters, pretrained caches."""
