fn main() {
    std::process::exit(fm_host::cli::run());
}
