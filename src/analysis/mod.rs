//! What a model is made of, read without changing it: every tensor's shape ([`shapes`]), the
//! multiplications and additions of every node ([`cost`]), the Conv layers and whether each can
//! be converted ([`select`]), and all three together ([`inventory`]).

pub mod cost;
pub mod fc;
pub mod inventory;
pub mod select;
pub mod shapes;
