#[ipckit::contract]
pub trait Logger {
    #[oneway]
    fn log(&self, line: String) -> bool;
}

fn main() {}
