//! The training loop of [`super::finetune`] (built with the `finetune` feature): batches of
//! augmented images, the teacher's and the student's logits from [`Graph`], KL loss, AdamW with
//! a cosine schedule, a held-out evaluation after every epoch.

use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use ndarray::Array4;
use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::eval::seen::{spread_indices, ImageSelection};

use crate::analysis::select::ConvLayer;
use crate::codebook::Codebook;
use crate::lower::reconstructed;
use crate::onnx::model::OnnxModel;
use crate::progress;
use crate::setting::{self, Setting};

use super::graph::{self, Graph, Overrides};
use super::job::{
    check_options, image_labels, EpochReport, FinetuneOptions, FinetuneReport, Job, Tuned,
};
use super::stored;
use super::variables::LayerVars;

fn batch_tensor(images: &[Array4<f32>]) -> Result<Tensor> {
    let (_, c, h, w) = images[0].dim();
    let data: Vec<f32> = images.iter().flat_map(|a| a.iter().copied()).collect();
    Ok(Tensor::from_vec(
        data,
        (images.len(), c, h, w),
        &Device::Cpu,
    )?)
}

/// Mean over the batch of KL(teacher ‖ student) on the softmax of the logits.
fn distillation_loss(teacher: &Tensor, student: &Tensor) -> Result<Tensor> {
    let lt = candle_nn::ops::log_softmax(teacher, D::Minus1)?;
    let ls = candle_nn::ops::log_softmax(student, D::Minus1)?;
    Ok((lt.exp()? * (lt - ls)?)?.sum(D::Minus1)?.mean_all()?)
}

struct Trainer<'a> {
    /// The original model: the teacher.
    graph: Graph,
    /// The student's fixed part: the original with its converted fully connected layers'
    /// reconstructed weights (not trained); the Conv layers come in as overrides.
    student: Graph,
    layers: Vec<LayerVars>,
    /// The weights and biases of the layers left original, when they are trained too.
    originals: Vec<(String, Var)>,
    /// The training images' labels, when their cross-entropy is part of the loss.
    labels: Option<Vec<u32>>,
    opts: &'a FinetuneOptions,
}

impl Trainer<'_> {
    /// The converted layers' kernels and biases; `hard`: soft assignments hardened.
    fn overrides(&self, hard: bool) -> Result<Overrides> {
        self.layers
            .iter()
            .map(|l| Ok((l.node_index, l.kernel_and_bias(hard)?)))
            .collect()
    }

    /// Held-out loss and agreement, `teacher` the held-out logits in batches.
    fn evaluate(&self, heldout: &[Array4<f32>], teacher: &[Tensor]) -> Result<(f64, f64)> {
        let overrides = self.overrides(true)?;
        let (mut loss, mut agree) = (0f64, 0usize);
        for (chunk, t) in heldout.chunks(self.opts.batch).zip(teacher) {
            let s = self
                .student
                .forward(&batch_tensor(chunk)?, &overrides)?
                .detach();
            loss += distillation_loss(t, &s)?.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            let (a, b) = (graph::argmax(t)?, graph::argmax(&s)?);
            agree += a.iter().zip(&b).filter(|(a, b)| a == b).count();
        }
        let n = heldout.len().max(1) as f64;
        Ok((loss / n, agree as f64 / n))
    }

    /// One epoch; the mean training loss, or why it diverged.
    fn epoch(
        &self,
        epoch: usize,
        train: &[Array4<f32>],
        opt: &mut AdamW,
        schedule: &dyn Fn(usize) -> f64,
        task: &progress::Task,
    ) -> Result<std::result::Result<f64, String>> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(self.opts.seed ^ (epoch as u64) << 32);
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rng);
        let steps = train.len().div_ceil(self.opts.batch);
        let mut total = 0f64;
        for (step, idx) in order.chunks(self.opts.batch).enumerate() {
            let images: Vec<Array4<f32>> =
                idx.iter().map(|&i| augment(&train[i], &mut rng)).collect();
            let x = batch_tensor(&images)?;
            let teacher = self.graph.forward(&x, &Overrides::new())?.detach();
            let student = self.student.forward(&x, &self.overrides(false)?)?;
            let mut loss = distillation_loss(&teacher, &student)?;
            if let Some(labels) = &self.labels {
                let target: Vec<u32> = idx.iter().map(|&i| labels[i]).collect();
                let target = Tensor::from_vec(target, idx.len(), &Device::Cpu)?;
                let logits = student.flatten_from(1)?;
                loss = (loss + candle_nn::loss::cross_entropy(&logits, &target)?)?;
            }
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                return Ok(Err(format!(
                    "loss {value} at epoch {epoch}, step {}",
                    step + 1
                )));
            }
            let lr = schedule((epoch - 1) * steps + step);
            opt.set_learning_rate(lr);
            // Soft assignments' τ follows the learning rate's cosine down to (almost) 0, so
            // that training ends on the kernel that is written: the hardened one.
            for l in &self.layers {
                l.anneal(lr / self.opts.lr);
            }
            opt.backward_step(&loss)?;
            total += value * idx.len() as f64;
            task.note(&format!("epoch {epoch} loss {value:.4}"));
            task.inc(1);
        }
        Ok(Ok(total / train.len().max(1) as f64))
    }
}

/// The best parameters seen: held-out loss, epoch (`None`: the start), values per layer.
type Best = (f64, Option<usize>, Vec<Vec<Tensor>>);

impl Trainer<'_> {
    /// Every trainable variable: the converted layers', then the original layers'.
    fn vars(&self) -> Vec<Var> {
        let converted = self.layers.iter().flat_map(|l| l.vars());
        converted
            .chain(self.originals.iter().map(|(_, v)| v.clone()))
            .collect()
    }

    /// The current values: one entry per converted layer, then one with the original layers'.
    fn snapshot(&self) -> Result<Vec<Vec<Tensor>>> {
        let mut out: Vec<Vec<Tensor>> = self
            .layers
            .iter()
            .map(|l| l.snapshot())
            .collect::<Result<_>>()?;
        let originals = self.originals.iter().map(|(_, v)| v.as_tensor().copy());
        out.push(originals.collect::<candle_core::Result<_>>()?);
        Ok(out)
    }

    fn restore(&self, snapshot: &[Vec<Tensor>]) -> Result<()> {
        for (l, snap) in self.layers.iter().zip(snapshot) {
            l.restore(snap)?;
        }
        let originals = snapshot
            .last()
            .context("a snapshot ends with the original layers")?;
        for ((_, v), t) in self.originals.iter().zip(originals) {
            v.set(t)?;
        }
        Ok(())
    }

    /// The held-out figures before training.
    fn start(&self, heldout: &[Array4<f32>], teacher: &[Tensor]) -> Result<EpochReport> {
        let started = Instant::now();
        let (loss, agreement) = self.evaluate(heldout, teacher)?;
        log::info!(
            "fine-tune: start, held-out loss {loss:.5}, agreement {:.2}%",
            100.0 * agreement
        );
        Ok(EpochReport {
            epoch: 0,
            train_loss: f64::NAN,
            heldout_loss: loss,
            heldout_agreement: agreement,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Every epoch, each followed by a held-out evaluation; the best parameters, the epochs'
    /// reports and why training stopped early, if it diverged.
    fn fit(
        &self,
        train: &[Array4<f32>],
        heldout: &[Array4<f32>],
        teacher: &[Tensor],
        mut best: Best,
    ) -> Result<(Best, Vec<EpochReport>, Option<String>)> {
        let opts = self.opts;
        let vars = self.vars();
        let adamw = ParamsAdamW {
            lr: opts.lr,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut opt = AdamW::new(vars, adamw)?;
        let steps = train.len().div_ceil(opts.batch);
        let total = (steps * opts.epochs).max(1) as f64;
        let schedule =
            |t: usize| opts.lr * 0.5 * (1.0 + (std::f64::consts::PI * t as f64 / total).cos());
        let task = progress::task("fine-tuning", (steps * opts.epochs) as u64);
        let mut epochs = Vec::new();
        for epoch in 1..=opts.epochs {
            let t0 = Instant::now();
            let train_loss = match self.epoch(epoch, train, &mut opt, &schedule, &task)? {
                Ok(l) => l,
                Err(why) => return Ok((best, epochs, Some(why))),
            };
            let (heldout_loss, agreement) = self.evaluate(heldout, teacher)?;
            log::info!(
                "fine-tune: epoch {epoch}/{}: train loss {train_loss:.5}, held-out loss {heldout_loss:.5}, agreement {:.2}% ({:.0}s)",
                opts.epochs,
                100.0 * agreement,
                t0.elapsed().as_secs_f64()
            );
            if heldout_loss < best.0 {
                best = (heldout_loss, Some(epoch), self.snapshot()?);
            }
            epochs.push(EpochReport {
                epoch,
                train_loss,
                heldout_loss,
                heldout_agreement: agreement,
                seconds: t0.elapsed().as_secs_f64(),
            });
        }
        Ok((best, epochs, None))
    }
}

/// The images to train on and hold out: the first `samples` (all by default), with a warning
/// when they hold few of a labelled folder's classes.
fn load_images(opts: &FinetuneOptions) -> Result<Vec<Array4<f32>>> {
    let (dir, first) = (&opts.data, ImageSelection::First);
    let images = crate::eval::images::preprocessed_images(
        dir,
        &opts.preprocess,
        opts.samples,
        first,
        "fine-tuning images",
        crate::setting::Setting::FinetuneSamples,
    )?;
    let remedy = format!(
        "no {} (all the images)",
        setting::name(Setting::FinetuneSamples)
    );
    crate::eval::images::warn_if_few_classes(dir, images.len(), "fine-tuning", &remedy);
    Ok(images)
}

/// Fine-tunes the codebooks of `layers` (each a converted Conv of `original` and its codebook),
/// and the layers left original when asked; returns what changed and the report.
pub fn run(job: &Job, opts: &FinetuneOptions) -> Result<(Tuned, FinetuneReport)> {
    check_options(opts)?;
    let (original, layers) = (job.teacher, job.layers.as_slice());
    let graph = Graph::new(original).context("fine-tuning runs the model's own operators")?;
    let images = load_images(opts)?;
    let heldout_count = ((images.len() as f64 * opts.holdout).round() as usize).max(1);
    ensure!(
        images.len() > heldout_count,
        "fine-tuning needs at least two images in {} (one held out), found {}",
        opts.data.display(),
        images.len()
    );
    let labels = match opts.labels {
        true => Some(image_labels(&opts.data, images.len())?),
        false => None,
    };
    let (train, heldout, train_labels) = split(images, heldout_count, labels);
    let (train, heldout) = (train.as_slice(), heldout.as_slice());
    let (mut student, trained) = student_graph(job.student, layers)?;
    let originals = match opts.train_original_layers {
        true => {
            let converted: Vec<usize> = layers.iter().map(|(l, _)| l.node_index).collect();
            let names = student.layer_constants(&converted);
            log::info!(
                "fine-tune: also training {} tensors of the layers left original",
                names.len()
            );
            student.train_constants(&names)?
        }
        false => vec![],
    };
    let vars = trained
        .iter()
        .map(|(l, cb)| {
            let train_bias = !job.fixed_bias.contains(&l.node_index);
            let base = stored::original_bias(original, l, cb.kernel_shape[0])?;
            let vars = LayerVars::new(l.node_index, cb, base, train_bias)?;
            match opts.soft_assignments {
                Some(t) => vars.with_soft_assignments(cb, t),
                None => Ok(vars),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let trainer = Trainer {
        graph,
        student,
        layers: vars,
        originals,
        labels: train_labels,
        opts,
    };
    let teacher: Vec<Tensor> = heldout
        .chunks(opts.batch)
        .map(|c| {
            let x = batch_tensor(c)?;
            Ok(trainer.graph.forward(&x, &Overrides::new())?.detach())
        })
        .collect::<Result<_>>()?;
    let start = trainer.start(heldout, &teacher)?;
    let initial = (start.heldout_loss, None, trainer.snapshot()?);
    let (best, epochs, diverged) = trainer.fit(train, heldout, &teacher, initial)?;
    if let Some(why) = &diverged {
        if !opts.keep_on_divergence {
            bail!(
                "fine-tuning diverged ({why}); lower {}, or pass {} to write the model with the best parameters before it",
                setting::name(Setting::LearningRate),
                setting::name(Setting::KeepOnDivergence)
            );
        }
        log::warn!("fine-tuning diverged ({why}); keeping the best parameters before it");
    }
    if best.1.is_none() {
        log::warn!(
            "fine-tuning did not lower the held-out loss below the start ({:.5}); the codebooks are unchanged",
            start.heldout_loss
        );
    }
    let tuned = match best.1 {
        Some(_) => {
            trainer.restore(&best.2)?;
            trainer.tuned(layers, &trained)?
        }
        None => Tuned {
            codebooks: layers.iter().map(|(_, cb)| (*cb).clone()).collect(),
            original_weights: vec![],
        },
    };
    let report = FinetuneReport {
        train_images: train.len(),
        heldout_images: heldout.len(),
        start,
        epochs,
        best_epoch: best.1,
        diverged,
        trained_original_tensors: trainer.originals.len(),
        peak_memory_bytes: crate::engine::memory::peak_memory_bytes(),
    };
    Ok((tuned, report))
}

impl Trainer<'_> {
    /// The current values as codebooks (one per layer of `layers`; the fully connected ones as
    /// they came) and original weights.
    fn tuned(
        &self,
        layers: &[(&ConvLayer, &Codebook)],
        trained: &[(&ConvLayer, &Codebook)],
    ) -> Result<Tuned> {
        let mut codebooks = self
            .layers
            .iter()
            .zip(trained)
            .map(|(v, (_, cb))| v.to_codebook(cb))
            .collect::<Result<Vec<_>>>()?
            .into_iter();
        let codebooks = layers
            .iter()
            .map(|(l, cb)| match l.fc {
                Some(_) => (*cb).clone(),
                None => codebooks.next().expect("one per trained layer"),
            })
            .collect();
        let original_weights = self
            .originals
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.flatten_all()?.to_vec1::<f32>()?)))
            .collect::<Result<_>>()?;
        Ok(Tuned {
            codebooks,
            original_weights,
        })
    }
}

/// The student's graph (the original with the converted fully connected layers' W̃ in place:
/// the trainer's Gemm and MatMul take no overrides, so those codebooks stay as clustered) and
/// the Conv layers whose codebooks are trained.
fn student_graph<'a>(
    original: &OnnxModel,
    layers: &[(&'a ConvLayer, &'a Codebook)],
) -> Result<(Graph, Vec<(&'a ConvLayer, &'a Codebook)>)> {
    let mut fixed = original.clone();
    let mut trained = Vec::new();
    for &(l, cb) in layers {
        match l.fc {
            Some(_) => {
                log::info!(
                    "layer `{}`: fully connected layers are not fine-tuned",
                    l.name
                );
                reconstructed::substitute(&mut fixed, l, cb)?;
            }
            None => trained.push((l, cb)),
        }
    }
    let graph = Graph::new(&fixed).context("fine-tuning runs the model's own operators")?;
    Ok((graph, trained))
}

/// Random horizontal flip and a shift of up to 1/8 of the size, zero-filled (the standard
/// CIFAR/ImageNet augmentation, crop-with-padding in place).
fn augment(x: &Array4<f32>, rng: &mut Xoshiro256PlusPlus) -> Array4<f32> {
    let (_, c, h, w) = x.dim();
    let flip = rng.random_bool(0.5);
    let (my, mx) = ((h / 8) as i64, (w / 8) as i64);
    let dy = rng.random_range(-my..=my);
    let dx = rng.random_range(-mx..=mx);
    Array4::from_shape_fn((1, c, h, w), |(_, ch, y, xx)| {
        let sy = y as i64 + dy;
        let sx0 = if flip { (w - 1 - xx) as i64 } else { xx as i64 };
        let sx = sx0 + dx;
        if sy < 0 || sy >= h as i64 || sx < 0 || sx >= w as i64 {
            0.0
        } else {
            x[[0, ch, sy as usize, sx as usize]]
        }
    })
}

/// Training images, held-out images, the training images' labels.
type Split = (Vec<Array4<f32>>, Vec<Array4<f32>>, Option<Vec<u32>>);

/// The images split into training and held-out ones (spread evenly, [`spread_indices`]),
/// with the training images' labels when given.
fn split(images: Vec<Array4<f32>>, heldout_count: usize, labels: Option<Vec<u32>>) -> Split {
    let held = spread_indices(images.len(), heldout_count);
    let (mut train, mut heldout, mut train_labels) = (Vec::new(), Vec::new(), Vec::new());
    for (i, x) in images.into_iter().enumerate() {
        match held.binary_search(&i) {
            Ok(_) => heldout.push(x),
            Err(_) => {
                train.push(x);
                if let Some(l) = &labels {
                    train_labels.push(l[i]);
                }
            }
        }
    }
    (train, heldout, labels.map(|_| train_labels))
}
