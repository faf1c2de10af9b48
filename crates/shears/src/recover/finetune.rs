//! Fine-tuning recovery: the trainer ([`crate::train`]) run on the pruned network with
//! knowledge distillation from the original and, usually, a time budget.

use shears_data::Dataset;
use shears_engine::Network;

use crate::progress::Verbosity;
use crate::train::{train_with, CheckpointConfig, TrainConfig, TrainReport};
use crate::zoo::Preprocess;
use crate::Error;

/// Fine-tunes `student` on `train_ds` (BatchNorm in train mode) with the trainer, validating
/// on `val_ds` as `cfg` says ([`TrainConfig::finetune`] gives the recovery defaults).
///
/// With a `teacher`, the loss is Hinton distillation against the teacher's logits (teacher in
/// eval mode on the same batch); a teacher needs [`TrainConfig::distill`]. Everything else
/// (schedules, time budget, checkpoints and bit-exact resume, the time-to-accuracy curve) is
/// [`train_with`]'s.
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    student: &mut Network,
    teacher: Option<&mut Network>,
    train_ds: &Dataset,
    val_ds: Option<&Dataset>,
    pre: &Preprocess,
    cfg: &TrainConfig,
    ckpt: &CheckpointConfig,
    verbosity: Verbosity,
) -> Result<TrainReport, Error> {
    if teacher.is_some() && cfg.distill.is_none() {
        return Err(Error::invalid(
            "a teacher was given without distillation settings (TrainConfig::distill)",
        ));
    }
    train_with(
        student, teacher, train_ds, val_ds, pre, cfg, ckpt, verbosity,
    )
}
