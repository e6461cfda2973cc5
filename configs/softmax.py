"""Softmax regression, "MNIST for ML Beginners" (784 -> 10)."""

PRESETS = {
    # The tutorial: GradientDescentOptimizer(0.5), batches of 100, 1,000 steps (~92%).
    "seed": dict(optimizer="sgd", learning_rate=0.5, batch_size=100, max_steps=1000),
    # Tuned: ten epochs with the same optimizer, decayed to zero along a cosine.
    "default": dict(optimizer="sgd", learning_rate=0.5, lr_schedule="cosine", batch_size=100,
                    max_steps=5500, eval_every=0),
    # A few steps on tiny synthetic data, for tests.
    "smoke": dict(data_source="fake", fake_examples=256, batch_size=32, max_steps=20,
                  steps_per_loop=5, log_every=10, checkpoint_every=10, eval_batch_size=50),
}
