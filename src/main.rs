fn main() {
    std::process::exit(onnx_dlq::cli::main(std::env::args_os()));
}
