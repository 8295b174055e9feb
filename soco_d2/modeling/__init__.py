"""Meta-architectures (registered in detectron2's META_ARCH_REGISTRY) and the
parts they share: MLP heads, losses, momentum encoders, queues."""
from . import meta_arch  # noqa: F401  (registers the meta-architectures)
from . import roi_heads  # noqa: F401  (registers Res5ROIHeadsExtraNorm, the C4 fine-tune head)
