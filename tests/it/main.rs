//! Integration tests: each starts the real `wxauth` binary on 127.0.0.1:0 in its own temporary
//! directory, in demo mode against the built-in fake WeChat (or a separately started fake), and
//! checks what a client sees and what the database holds afterwards.

mod harness;

mod admin;
mod api;
mod apps;
mod cli;
mod demo;
mod faults;
mod front;
mod hostile;
mod import;
mod login;
mod logout;
mod observe;
mod operator;
mod python;
mod register;
mod service;
mod upgrade;
mod verify;
mod wechat;
