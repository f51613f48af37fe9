#[ipckit::contract]
pub trait Counter {
    fn zero() -> u64;
    fn increment(&mut self) -> u64;
    fn name(&self, label: &str) -> String;
}

fn main() {}
