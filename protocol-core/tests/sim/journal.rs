//! The daemon's journal, in memory. The handle is shared, so the journal outlives the
//! session object: a simulated daemon restart drops every session and rebuilds it from
//! here.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::rc::Rc;

use protocol_core::session::{CallRecord, Journal, JournalMeta};
use protocol_core::wire::{CallId, Seq};

#[derive(Debug, Default)]
struct Data {
    meta: Option<JournalMeta>,
    messages: BTreeMap<Seq, Vec<u8>>,
    calls: Vec<CallRecord>,
}

#[derive(Debug, Clone, Default)]
pub struct MemJournal(Rc<RefCell<Data>>);

impl Journal for MemJournal {
    type Error = Infallible;

    fn save_meta(&mut self, meta: &JournalMeta) -> Result<(), Infallible> {
        self.0.borrow_mut().meta = Some(*meta);
        Ok(())
    }

    fn append(&mut self, seq: Seq, body: &[u8]) -> Result<(), Infallible> {
        self.0.borrow_mut().messages.insert(seq, body.to_vec());
        Ok(())
    }

    fn trim(&mut self, through: Seq) -> Result<(), Infallible> {
        let mut d = self.0.borrow_mut();
        d.messages = d.messages.split_off(&(through + 1));
        Ok(())
    }

    fn clear_messages(&mut self) -> Result<(), Infallible> {
        self.0.borrow_mut().messages.clear();
        Ok(())
    }

    fn put_call(&mut self, call: &CallRecord) -> Result<(), Infallible> {
        let mut d = self.0.borrow_mut();
        match d.calls.iter_mut().find(|c| c.id == call.id) {
            Some(c) => *c = *call,
            None => d.calls.push(*call),
        }
        Ok(())
    }

    fn remove_call(&mut self, id: CallId) -> Result<(), Infallible> {
        self.0.borrow_mut().calls.retain(|c| c.id != id);
        Ok(())
    }

    fn load_meta(&self) -> Result<Option<JournalMeta>, Infallible> {
        Ok(self.0.borrow().meta)
    }

    fn for_each_message(&self, visit: &mut dyn FnMut(Seq, &[u8])) -> Result<(), Infallible> {
        for (seq, body) in &self.0.borrow().messages {
            visit(*seq, body);
        }
        Ok(())
    }

    fn for_each_call(&self, visit: &mut dyn FnMut(&CallRecord)) -> Result<(), Infallible> {
        for c in &self.0.borrow().calls {
            visit(c);
        }
        Ok(())
    }
}
