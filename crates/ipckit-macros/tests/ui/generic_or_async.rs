#[ipckit::contract]
pub trait Store {
    fn put<T: serde::Serialize>(&self, value: T);
    async fn get(&self, key: String) -> String;
}

fn main() {}
