"""The embedded world: a miniature GenEval-style text-to-image world on Fashion-MNIST.

Modules are imported where used (``diffpref.world.build``, ``.prompts``, ...): importing the
package must stay cheap because every stage's params validation reads ``world.settings``.
"""
