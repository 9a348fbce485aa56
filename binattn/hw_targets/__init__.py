"""binattn.hw_targets: a simulated HAD-style CAM attention accelerator and its cost model.

``resolve_target("had-cam-45nm")`` gives a calibrated preset (CAMformer's module table; also
``-28nm`` and ``-7nm`` by the scaling rule in ``scaling``); ``build_descriptor(target, sites)``
costs each binarized attention site on it and on a standard bf16 attention baseline and returns
the versioned target descriptor (``write_descriptor``/``read_descriptor`` validate it against the
JSON schema shipped here); ``report`` prints tables and writes the PNG. See docs/asic.md.
"""
from .cost_model import AttentionShape, Cost, baseline_layer_cost, cam_layer_cost, cam_query_cost
from .descriptor import (SCHEMA_VERSION, DescriptorError, build_descriptor, read_descriptor,
                         resolve_target, schema, validate, write_descriptor)
from .hardware import BaselineAccelerator, Block, CamAccelerator, HardwareConfigError, Memory
from .presets import PRESETS, TARGETS, baseline_for, get_preset
from .sites import (SiteSpec, attention_site, parse_attention, site_specs, sites_from_graph,
                    sites_from_program)

__all__ = ["AttentionShape", "Cost", "baseline_layer_cost", "cam_layer_cost", "cam_query_cost",
           "SCHEMA_VERSION", "DescriptorError", "build_descriptor", "read_descriptor",
           "resolve_target", "schema", "validate", "write_descriptor", "BaselineAccelerator",
           "Block", "CamAccelerator", "HardwareConfigError", "Memory", "PRESETS", "TARGETS",
           "baseline_for", "get_preset", "SiteSpec", "attention_site", "parse_attention",
           "sites_from_graph", "sites_from_program", "site_specs"]
