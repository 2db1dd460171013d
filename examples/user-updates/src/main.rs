fn main() {
    eprintln!("the seed example is not built yet (runtime issue)");
    std::process::exit(2);
}
