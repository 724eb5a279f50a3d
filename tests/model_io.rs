//! Loading and saving: full-fidelity round trips (shared models, newer IR fields), float
//! element types, external data, and refusing to overwrite inputs.

mod common;

use std::fs;

use onnx_dlq::onnx::build;
use onnx_dlq::onnx::model::{self, ExternalData};
use onnx_dlq::onnx::tensor::{self, FloatType};
use onnx_dlq::proto::*;
use prost::Message;

#[test]
fn shared_models_round_trip_with_every_field_kept() {
    let Some(shared) = common::shared("shared_models_round_trip_with_every_field_kept") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for file in [
        "squeezenet1.1.onnx",
        "squeezenet1.1-fp16.onnx",
        "resnet20-cifar10.onnx",
        "resnet56-cifar10.onnx",
    ] {
        let path = shared.join("models").join(file);
        let original = model::load(&path).unwrap();
        let out = tmp.path().join(file);
        model::save(&original, &out, ExternalData::Auto).unwrap();
        let again = model::load(&out).unwrap();
        assert_eq!(
            again.proto, original.proto,
            "{file}: decoded messages differ after a round trip"
        );
        // These files were written by protobuf's canonical serializer; so is ours: same bytes.
        assert!(
            fs::read(&out).unwrap() == fs::read(&path).unwrap(),
            "{file}: bytes differ after a round trip"
        );
        assert!(
            !again.has_external_data(),
            "{file}: nothing was external, nothing should become so"
        );
    }
}

/// A model using fields that IR 8 does not have: node/graph/value-info metadata_props (IR 10),
/// functions with overloads and attributes (IR 10), sparse initializers, device configurations
/// (IR 11), training info.
fn model_with_newer_fields() -> ModelProto {
    let meta = |k: &str, v: &str| StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v.into()),
    };
    let w = tensor::new_tensor("w", &[2, 1, 1, 1], &[1.0, -1.0], FloatType::F32);
    let sparse = SparseTensorProto {
        values: Some(tensor::new_tensor(
            "s_values",
            &[2],
            &[3.0, 4.0],
            FloatType::F32,
        )),
        indices: Some(tensor::new_i64_tensor("s_indices", &[2], &[0, 3])),
        dims: vec![4],
    };
    let conv = NodeProto {
        input: vec!["x".into(), "w".into()],
        output: vec!["y".into()],
        name: Some("conv".into()),
        op_type: Some("Conv".into()),
        metadata_props: vec![meta("origin", "test")],
        device_configurations: vec![NodeDeviceConfigurationProto {
            configuration_id: Some("cfg".into()),
            pipeline_stage: Some(1),
            ..Default::default()
        }],
        ..Default::default()
    };
    let f32_info = |name: &str, dims: &[i64]| ValueInfoProto {
        metadata_props: vec![meta("unit", "none")],
        ..onnx_dlq::onnx::build::value_info(name, 1, Some(dims))
    };
    ModelProto {
        ir_version: Some(11),
        opset_import: vec![OperatorSetIdProto {
            domain: Some("".into()),
            version: Some(21),
        }],
        producer_name: Some("test".into()),
        metadata_props: vec![meta("model", "meta")],
        graph: Some(GraphProto {
            node: vec![conv],
            name: Some("g".into()),
            initializer: vec![w],
            sparse_initializer: vec![sparse],
            input: vec![f32_info("x", &[1, 1, 2, 2])],
            output: vec![f32_info("y", &[1, 2, 2, 2])],
            metadata_props: vec![meta("graph", "meta")],
            ..Default::default()
        }),
        functions: vec![FunctionProto {
            name: Some("Twice".into()),
            domain: Some("custom".into()),
            overload: Some("v2".into()),
            input: vec!["a".into()],
            output: vec!["b".into()],
            attribute_proto: vec![build::attr_int("k", 2)],
            node: vec![build::node("Add", "", &["a", "a"], &["b"], vec![])],
            metadata_props: vec![meta("fn", "meta")],
            ..Default::default()
        }],
        configuration: vec![DeviceConfigurationProto {
            name: Some("cfg".into()),
            num_devices: Some(2),
            device: vec!["cpu0".into(), "cpu1".into()],
        }],
        training_info: vec![TrainingInfoProto::default()],
        ..Default::default()
    }
}

#[test]
fn fields_newer_than_ir8_survive_a_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("new.onnx");
    let proto = model_with_newer_fields();
    fs::write(&src, proto.encode_to_vec()).unwrap();
    let loaded = model::load(&src).unwrap();
    assert_eq!(loaded.proto, proto);
    let out = tmp.path().join("out.onnx");
    model::save(&loaded, &out, ExternalData::Auto).unwrap();
    let again = model::load(&out).unwrap();
    assert_eq!(again.proto, proto);
    let g = again.graph();
    assert_eq!(g.node[0].metadata_props[0].value.as_deref(), Some("test"));
    assert_eq!(g.node[0].device_configurations[0].pipeline_stage, Some(1));
    assert_eq!(g.sparse_initializer[0].dims, vec![4]);
    assert_eq!(again.proto.functions[0].overload.as_deref(), Some("v2"));
    assert_eq!(again.proto.configuration[0].num_devices, Some(2));
}

#[test]
fn fp16_weights_read_as_f32_and_write_back_bit_exact() {
    let Some(path) = common::shared_model(
        "fp16_weights_read_as_f32_and_write_back_bit_exact",
        "squeezenet1.1-fp16.onnx",
    ) else {
        return;
    };
    let m = model::load(&path).unwrap();
    let t = m
        .initializer("fire8/expand3x3_w_0")
        .expect("weight of fire8/expand3x3");
    assert_eq!(
        FloatType::from_onnx(t.data_type.unwrap()),
        Some(FloatType::F16)
    );
    let values = m.tensor_f32(t).unwrap();
    assert_eq!(values.shape(), &[256, 64, 3, 3]);
    let original = tensor::raw_bytes(t, &m.base_dir).unwrap().into_owned();
    let rewritten = tensor::new_tensor(
        "w",
        values.shape(),
        values.as_slice().unwrap(),
        FloatType::F16,
    );
    assert_eq!(rewritten.raw_data.unwrap(), original);
    // The fp32 copy holds the same numbers.
    let f32_model = model::load(&path.with_file_name("squeezenet1.1.onnx")).unwrap();
    let f32_values = f32_model
        .tensor_f32(f32_model.initializer("fire8/expand3x3_w_0").unwrap())
        .unwrap();
    assert_eq!(f32_values, values);
}

#[test]
fn external_data_is_read_written_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let original = model::load(&common::default_model()).unwrap();
    let ext_dir = tmp.path().join("ext");
    fs::create_dir(&ext_dir).unwrap();
    let ext = ext_dir.join("m.onnx");
    let report = model::save(&original, &ext, ExternalData::Always { threshold: 0 }).unwrap();
    let (data_path, data_len) = report.external.clone().expect("a data file");
    assert_eq!(data_path, ext_dir.join("m.onnx.data"));
    assert!(
        data_len > 0 && report.model_bytes < 4096,
        "weights left the protobuf: {report:?}"
    );

    let loaded = model::load(&ext).unwrap();
    assert!(loaded.has_external_data());
    for t in &original.graph().initializer {
        let name = t.name.as_deref().unwrap();
        let ext_t = loaded.initializer(name).unwrap();
        assert!(tensor::is_external(ext_t), "{name}");
        assert_eq!(
            loaded.tensor_f32(ext_t).unwrap(),
            original.tensor_f32(t).unwrap(),
            "{name}"
        );
    }
    // Shapes (through tract, which reads the data file too) still work.
    let shapes = onnx_dlq::analysis::shapes::infer(&loaded, &[]).unwrap();
    assert_eq!(shapes.get("conv4_out"), Some(&[1, 64, 4, 4][..]));

    // Saving elsewhere keeps the tensors external, in a data file next to the new model.
    let out = tmp.path().join("copy.onnx");
    let report = model::save(&loaded, &out, ExternalData::Auto).unwrap();
    assert_eq!(
        report.external.unwrap().0,
        tmp.path().join("copy.onnx.data")
    );
    let copy = model::load(&out).unwrap();
    assert!(copy.has_external_data());
    let w = copy.initializer("conv2.weight").unwrap();
    assert_eq!(
        copy.tensor_f32(w).unwrap(),
        original
            .tensor_f32(original.initializer("conv2.weight").unwrap())
            .unwrap()
    );

    // Neither the input model nor its data file may be overwritten.
    let e = model::save(&loaded, &ext, ExternalData::Auto).unwrap_err();
    assert!(e.to_string().contains("refusing to write"), "{e}");
    let sneaky = ext_dir.join("m.onnx.data").with_file_name("m.onnx.data");
    let e = model::save(&loaded, &sneaky.with_extension(""), ExternalData::Auto);
    // `m.onnx` again through another spelling: refused too.
    assert!(e.is_err());
}

#[test]
fn external_data_with_a_lying_length_is_an_error_not_an_allocation() {
    let tmp = tempfile::tempdir().unwrap();
    let original = model::load(&common::default_model()).unwrap();
    let path = tmp.path().join("m.onnx");
    model::save(&original, &path, ExternalData::Always { threshold: 0 }).unwrap();
    let mut m = model::load(&path).unwrap();
    let t = common::initializer_mut(&mut m, "conv2.weight");
    for e in &mut t.external_data {
        if e.key.as_deref() == Some("length") {
            e.value = Some(u64::MAX.to_string());
        }
    }
    let t = m.initializer("conv2.weight").unwrap();
    let err = format!("{:#}", m.tensor_f32(t).unwrap_err());
    assert!(
        err.contains("conv2.weight") && err.contains("external data file"),
        "{err}"
    );
}

#[test]
fn a_save_that_cannot_happen_leaves_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let original = model::load(&common::default_model()).unwrap();
    let missing_dir = tmp.path().join("nope").join("out.onnx");
    let e = model::save(&original, &missing_dir, ExternalData::Auto).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
}

/// The output is an ordinary file: created with the same permissions as any new file in that
/// folder (0666 minus the umask), not the 0600 of the temporary file it is written through.
#[cfg(unix)]
#[test]
fn the_output_has_ordinary_file_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let original = model::load(&common::default_model()).unwrap();
    let out = dir.path().join("out.onnx");
    model::save(&original, &out, ExternalData::Auto).unwrap();
    let plain = dir.path().join("plain");
    std::fs::File::create(&plain).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(&out),
        mode(&plain),
        "{:o} vs {:o}",
        mode(&out),
        mode(&plain)
    );
}
