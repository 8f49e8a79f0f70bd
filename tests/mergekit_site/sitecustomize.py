"""Loaded by every mergekit run the tests start (`helpers.mergekit_env`): mergekit's
arcee_fusion given mergepkg's softmax. Its importance is the KL divergence of two
near-equal softmaxes, which rounding decides, and torch.softmax's bits change with the
CPU's vector width, in mergekit too; mergepkg's softmax is the same on AVX2 and AVX-512
(docs/methods.md). With it, mergekit must give mergepkg's bytes exactly: every other
operation of the method is compared."""

import types

import mergekit.merge_methods.arcee_fusion as theirs

from mergepkg.methods.arcee_fusion import softmax

theirs.F = types.SimpleNamespace(softmax=lambda x, dim: softmax(x))
