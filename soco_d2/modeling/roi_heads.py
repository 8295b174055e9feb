"""``Res5ROIHeadsExtraNorm``: the C4 detection head of the MoCo / DenseCL / SoCo
fine-tuning protocol, registered in detectron2's ``ROI_HEADS_REGISTRY``.

It is detectron2's ``Res5ROIHeads`` with one more norm layer (of
``MODEL.RESNETS.NORM``, SyncBN in the protocol) on the output of the res5
stage.  Self-supervised backbones are fine-tuned with BN everywhere; the extra
norm normalises the res5 features before the box predictor, as in MoCo's
detection code.  Neither SoCo nor stock detectron2 register it, although
their published C4 configs name it (docs/tools/transfer_net.md, The protocols).
"""
from detectron2.layers import get_norm
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """Res5ROIHeads whose res5 block ends with ``norm`` (``roi_heads.res5.norm.*``)."""

    @classmethod
    def _build_res5_block(cls, cfg):
        res5, out_channels = super()._build_res5_block(cfg)
        res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return res5, out_channels
