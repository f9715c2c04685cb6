fn main() {
    eprintln!("dqe: being written");
    std::process::exit(2);
}
