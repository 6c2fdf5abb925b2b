"""The model runtime: what finds, loads, converts and runs a model, with no notion of requests.

Where the weights come from (:mod:`.model_source`), what the fast forward implements
(:mod:`.architecture`), the dtype and weight format (:mod:`.precision`), loading and
conversion (:mod:`.loader`), the forward pass (:mod:`.model`, or transformers' own model on
:mod:`.generic` and :mod:`.vision`), weight formats (:mod:`.weights`), KV buffers and the
prefix index (:mod:`.kv`), CPU placement (:mod:`.placement`) and Reprise's C kernels
(:mod:`.native`). The service (:mod:`inference_svc.core`) imports this package; nothing here
imports the service.
"""
