#[ipckit::contract]
pub trait Chat {
    fn connect(&self, room: String) -> bool;
    #[oneway]
    fn subscribe(&self, topic: String);
    #[event]
    fn publisher(&self, name: String);
}

fn main() {}
