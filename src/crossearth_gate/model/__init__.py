"""The model: frozen backbone, segmentor, saved-model spec, sliding-window inference, slot merging."""
