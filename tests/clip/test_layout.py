"""Full-size CLIP-L, CLIP-G and T5-XXL built on the meta device have the real names and shapes.

Compared with the hand-written key lists of sd3/testing/tiny/text.py at real sizes and with
transformers' own models of the published configs, built on the meta device.
"""

import torch

from sd3.clip import CLIPConfig, CLIPTextModel, T5Config, T5Encoder
from sd3.testing.tiny.random import MetaTensors
from sd3.testing.tiny.text import TinyCLIP, TinyT5, clip_state_dict, t5_state_dict


def _shapes(state_dict):
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def _meta(model_class, config):
    with torch.device("meta"):
        return model_class(config)


def test_clip_l():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection as Reference

    ours = _shapes(_meta(CLIPTextModel, CLIPConfig.clip_l()).state_dict())
    assert ours == _shapes(clip_state_dict(TinyCLIP(vocab=49408, width=768, layers=12, mlp=3072), tensors=MetaTensors()))
    reference = _meta(Reference, CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                 num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768))
    # diffusers loads SD3's CLIP-L (no text_projection in the file) into this class with an identity projection.
    expected = _shapes(reference.state_dict())
    del expected["text_projection.weight"]
    assert ours == expected


def test_clip_g():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection as Reference

    ours = _shapes(_meta(CLIPTextModel, CLIPConfig.clip_g()).state_dict())
    real = clip_state_dict(TinyCLIP(vocab=49408, width=1280, layers=32, mlp=5120, projection=True), tensors=MetaTensors())
    assert ours == _shapes(real)
    reference = _meta(Reference, CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                                 num_attention_heads=20, hidden_act="gelu", projection_dim=1280))
    assert ours == _shapes(reference.state_dict())


def test_t5_xxl():
    from transformers import T5Config as ReferenceConfig, T5EncoderModel as Reference

    ours = _shapes(_meta(T5Encoder, T5Config.t5_xxl()).state_dict())
    arch = TinyT5(vocab=32128, d_model=4096, heads=64, d_kv=64, d_ff=10240, layers=24)
    assert ours == _shapes(t5_state_dict(arch, embedding_keys=("shared.weight",), tensors=MetaTensors()))
    reference = _meta(Reference, ReferenceConfig(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                                  num_heads=64, feed_forward_proj="gated-gelu"))
    # transformers also names the tied embedding `encoder.embed_tokens.weight`.
    assert {**ours, "encoder.embed_tokens.weight": (32128, 4096)} == _shapes(reference.state_dict())


def test_configs_inferred_from_full_size_state_dicts_are_the_presets():
    l_model = _meta(CLIPTextModel, CLIPConfig.clip_l())
    g_model = _meta(CLIPTextModel, CLIPConfig.clip_g())
    assert CLIPConfig.from_state_dict(l_model.state_dict()) == CLIPConfig.clip_l()
    assert CLIPConfig.from_state_dict(g_model.state_dict(), hidden_act="gelu", project_pooled=True) == CLIPConfig.clip_g()
    assert T5Config.from_state_dict(_meta(T5Encoder, T5Config.t5_xxl()).state_dict()) == T5Config.t5_xxl()
