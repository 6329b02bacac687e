fn main() {
    eprintln!("xtask: not written yet");
    std::process::exit(1);
}
