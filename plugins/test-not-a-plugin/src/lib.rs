//! A valid shared object without a plugin root module.

#[unsafe(no_mangle)]
pub extern "C" fn not_a_consumer() -> i32 {
    42
}
