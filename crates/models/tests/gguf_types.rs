//! Every GGUF tensor type the loader promises (F32, F16, BF16, Q8_0, Q4_0,
//! Q4_1, Q4_K, Q5_K, Q6_K) is read and dequantised to f32 through the same
//! path real models take.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use cram::model::read_gguf;
use cram::weights::Weights;

#[test]
fn every_supported_gguf_type_dequantises_to_f32() {
    let dev = Device::Cpu;
    // k-quants work on blocks of 256 values.
    let t = Tensor::randn(0f32, 1.0, (4, 256), &dev).unwrap();
    // Quantisation error bound (RMS error relative to RMS of the data).
    let cases = [
        (GgmlDType::F32, 0.0),
        (GgmlDType::F16, 1e-3),
        (GgmlDType::BF16, 1e-2),
        (GgmlDType::Q8_0, 1e-2),
        (GgmlDType::Q4_0, 0.15),
        (GgmlDType::Q4_1, 0.15),
        (GgmlDType::Q4K, 0.15),
        (GgmlDType::Q5K, 0.08),
        (GgmlDType::Q6K, 0.04),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (dtype, bound) in cases {
        let q = QTensor::quantize(&t, dtype).unwrap();
        let path = dir.path().join(format!("{dtype:?}.gguf"));
        cram_testkit::write_one_tensor_gguf(&path, &q);
        let content = read_gguf(&path).unwrap();
        assert_eq!(content.tensor_infos["token_embd.weight"].ggml_dtype, dtype);
        let w = Weights::from_gguf_named(
            &path,
            std::sync::Arc::new(content),
            cram::model::llama::hf_name_for_gguf,
            &dev,
            DType::F32,
        )
        .unwrap();
        let got = w.get_f32("model.embed_tokens.weight", &[4, 256]).unwrap();
        assert_eq!(got.dtype(), DType::F32);
        let rel = ((&got - &t)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            / t.sqr()
                .unwrap()
                .mean_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap())
        .sqrt();
        println!("{dtype:?}: relative RMS error {rel:.2e}");
        assert!(rel <= bound as f32, "{dtype:?}: error {rel} above {bound}");
        if dtype != GgmlDType::F32 {
            assert!(rel > 0.0, "{dtype:?} must actually be quantised");
        }
    }
}
