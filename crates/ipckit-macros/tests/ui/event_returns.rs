#[ipckit::contract]
pub trait Thermometer {
    #[event]
    fn measured(&self, celsius: f64) -> f64;
    #[event]
    fn alarm(&self) {}
}

fn main() {}
