"""The tutorial CNN: conv32 5x5 / pool / conv64 5x5 / pool / dense 1024 / dropout / 10."""

PRESETS = {
    # "Deep MNIST for Experts" / the layers tutorial: Adam 1e-4, batch 50, 20,000 steps (~99.2%).
    "seed": dict(optimizer="adam", learning_rate=1e-4, batch_size=50, max_steps=20000,
                 dropout_rate=0.4, eval_every=5000, checkpoint_every=2000),
    # The layers tutorial's estimator: SGD 0.001, batch 100, 20,000 steps (~97.3%).
    "seed_sgd": dict(optimizer="sgd", learning_rate=1e-3, batch_size=100, max_steps=20000,
                     dropout_rate=0.4, eval_every=5000, checkpoint_every=2000),
    # Tuned: Adam with warm-up and cosine decay, about 11 epochs of randomly
    # shifted, rotated and zoomed digits.
    "default": dict(optimizer="adam", learning_rate=1e-3, lr_schedule="cosine",
                    warmup_steps=200, batch_size=100, max_steps=6000, dropout_rate=0.4,
                    augment=True, augment_shift=2.0, augment_rotation=10.0, augment_scale=0.1,
                    checkpoint_every=1000, eval_every=1000),
    # As fast as possible to 99.0% test on 2 CPU cores: 1.3 epochs at a high Adam rate with
    # linear warm-up and decay to 0; bfloat16 where the CPU has bfloat16 units; one
    # checkpoint at the end; only what it reports is computed: the test accuracy, no
    # TensorBoard summaries (their pictures and histograms cost seconds here).
    "fast": dict(optimizer="adam", learning_rate=2e-3, lr_schedule="linear", warmup_steps=100,
                 batch_size=100, max_steps=700, dropout_rate=0.4, checkpoint_every=700,
                 eval_splits="test", summaries=False, auto_mixed_precision=True),
    # Aimed at the published single-model figures (99.6-99.7%, docs/ACCURACY.md), the
    # architecture unchanged: 60 epochs of Simard et al.'s elastic distortion on top of the
    # default's shifts, rotations and zooms, label smoothing 0.1, Adam with cosine decay.
    # Chosen from the literature, the length on the validation split (30 epochs,
    # `--max_steps=16500`, scored lower on each seed); measured in docs/ACCURACY.md.
    "best": dict(optimizer="adam", learning_rate=1e-3, lr_schedule="cosine",
                 warmup_steps=400, batch_size=100, max_steps=33000, dropout_rate=0.4,
                 label_smoothing=0.1, augment=True, augment_shift=2.0, augment_rotation=10.0,
                 augment_scale=0.1, augment_elastic_alpha=34.0, augment_elastic_sigma=6.0,
                 eval_every=3300, eval_splits="validation,test", checkpoint_every=3300),
    "smoke": dict(data_source="fake", fake_examples=128, batch_size=16, max_steps=6,
                  steps_per_loop=3, log_every=3, checkpoint_every=3, eval_batch_size=50),
}
