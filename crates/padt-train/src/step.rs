//! One PaDT training computation: a collated [`Batch`] → forward → the SFT loss
//! (`PaDTSFTTrainer.compute_loss`, padt-reference.md §3).
//!
//! A batch without any object still runs the decoder on the reference's dummy object and adds
//! its losses with weight 0, so every data-parallel rank runs the same graph (ARCHITECTURE.md
//! decision 7) while the loss value is unchanged.

use burn::tensor::{backend::Backend, Tensor, TensorData};
use padt_data::batch::Batch;
use padt_model::padt::{PadtModel, PadtTrainInput, PadtTrainOutput};
use padt_model::ModelError;

use crate::loss::{
    box_losses, combine, mask_losses, token_loss, GtBoxes, LossConfig, StepLoss, TokenTargets,
};

/// The forward inputs of a batch.
pub fn train_input<B: Backend>(
    batch: &Batch,
    warmup: bool,
    device: &B::Device,
) -> PadtTrainInput<B> {
    let rows = |a: &padt_data::batch::Array<i64>| -> Vec<Vec<i64>> {
        (0..a.shape[0]).map(|i| a.row(i).to_vec()).collect()
    };
    PadtTrainInput {
        input_ids: rows(&batch.input_ids),
        attention_mask: rows(&batch.attention_mask)
            .into_iter()
            .map(|r| r.into_iter().map(|m| m != 0).collect())
            .collect(),
        prompt_len: batch.prompt_length,
        pixel_values: Tensor::from_data(
            TensorData::new(
                batch.pixel_values.data.clone(),
                batch.pixel_values.shape.clone(),
            ),
            device,
        ),
        image_grid_thw: batch
            .image_grid_thw
            .data
            .chunks(3)
            .map(|g| [g[0] as usize, g[1] as usize, g[2] as usize])
            .collect(),
        warmup,
    }
}

/// Token-loss targets of a batch: completion ids (global VRTs), the completion mask and the
/// robust-CE exclusions (one row per VRT target, row-major).
pub fn token_targets(batch: &Batch) -> TokenTargets {
    let len = batch.completion_length();
    let rows = batch.vrt_target_positions();
    let columns = batch.vrt_masked_columns();
    debug_assert_eq!(
        rows.len(),
        columns.len(),
        "one robust-CE row per VRT target"
    );
    TokenTargets {
        batch: batch.batch_size(),
        len,
        targets: batch.completion_ids.data.clone(),
        completion_mask: batch.completion_mask.data.iter().map(|&m| m != 0).collect(),
        vrt_exclusions: rows
            .into_iter()
            .zip(columns)
            .map(|((b, t), cols)| (b * len + t, cols.into_iter().map(|c| c as usize).collect()))
            .collect(),
    }
}

/// The loss of one batch, with the forward's outputs.
pub struct BatchLoss<B: Backend> {
    pub loss: StepLoss<B>,
    pub output: PadtTrainOutput<B>,
}

/// Forward and loss of one batch. `warmup`: feed the decoder the VRT prototypes (the
/// reference's decoder warm-up).
pub fn compute_loss<B: Backend>(
    model: &PadtModel<B>,
    batch: &Batch,
    config: &LossConfig,
    warmup: bool,
    eos_token_id: i64,
) -> Result<BatchLoss<B>, ModelError> {
    let device = model.vis_norm.weight.device();
    let output = model.forward_train(&train_input(batch, warmup, &device), eos_token_id)?;
    let token = token_loss(
        output.logits.clone(),
        &token_targets(batch),
        model.vocab_size(),
        config.use_sft_vp_mask,
    );
    let decoded = &output.decoder;
    let (gt, gt_masks, valid, decoder_weight) = if output.has_objects {
        if decoded.pred_boxes.dims()[0] != batch.objects.len() {
            return Err(ModelError::InvalidInput(format!(
                "the completions hold {} VRT runs but the batch has {} objects",
                decoded.pred_boxes.dims()[0],
                batch.objects.len()
            )));
        }
        let boxes: Vec<[f64; 4]> = batch.objects.iter().map(|o| o.bbox_xyxy).collect();
        let to_tensor = |a: &padt_data::batch::Array<f32>| {
            Tensor::<B, 3>::from_data(TensorData::new(a.data.clone(), a.shape.clone()), &device)
        };
        (
            GtBoxes::from_xyxy(&boxes),
            to_tensor(&batch.gt_masks),
            to_tensor(&batch.mask_valid),
            1.0,
        )
    } else {
        // The dummy object: any target works, its terms are weighted 0.
        let mask_shape = decoded
            .pred_mask
            .as_ref()
            .map(|m| m.dims())
            .unwrap_or([1, 1, 1]);
        (
            GtBoxes::from_xyxy(&[[0.0, 0.0, 1.0, 1.0]]),
            Tensor::zeros(mask_shape, &device),
            Tensor::ones(mask_shape, &device),
            0.0,
        )
    };
    let boxes = config
        .use_bbox_loss
        .then(|| box_losses(decoded.pred_boxes.clone(), decoded.pred_score.clone(), &gt));
    let masks = match (&decoded.pred_mask, config.use_mask_loss) {
        (Some(pred), true) => Some(mask_losses(
            pred.clone(),
            gt_masks,
            valid,
            config.focal_alpha,
            config.focal_gamma,
        )),
        _ => None,
    };
    let loss = combine(
        config,
        &token,
        boxes.as_ref(),
        masks.as_ref(),
        decoder_weight,
    );
    Ok(BatchLoss { loss, output })
}
