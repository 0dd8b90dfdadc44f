"""torchvision's Swin models: not yet fused (see the families issue)."""
METHOD = "forward"


def targets(model):
    return []


def unsupported(module):
    return None


def fused(self, *args, **kwargs):
    raise NotImplementedError
