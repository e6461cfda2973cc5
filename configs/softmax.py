"""Softmax regression, "MNIST for ML Beginners" (784 -> 10)."""

PRESETS = {
    # The tutorial: GradientDescentOptimizer(0.5), batches of 100, 1,000 steps (~92%).
    # jit_compile: each chunk of steps is one XLA program (trainer.py); 2.1x fit here.
    "seed": dict(optimizer="sgd", learning_rate=0.5, batch_size=100, max_steps=1000,
                 jit_compile=True, eval_every=250),
    # Tuned on validation (seed 0: SGD 0.5 cosine for 10 / 20 / 40 epochs 92.80 /
    # 92.92 / 93.00%; Adam 3e-3 cosine 20 epochs 93.14%): Adam, 20 epochs, cosine.
    "default": dict(optimizer="adam", learning_rate=3e-3, lr_schedule="cosine",
                    batch_size=100, max_steps=11000, eval_every=1000, jit_compile=True),
    # A few steps on tiny synthetic data, for tests.
    "smoke": dict(data_source="fake", fake_examples=256, batch_size=32, max_steps=20,
                  steps_per_loop=5, log_every=10, checkpoint_every=10, eval_batch_size=50),
}
