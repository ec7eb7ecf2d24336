//! Workarounds for DataFusion defects that change results, each until a fixed release is taken.
//!
//! - Grouped MIN/MAX over floats (apache/datafusion#24432): DataFusion 55's grouped accumulator
//!   starts from the largest finite value, so a group holding only +∞ (or −∞) reports ±1.797e308.
//!   [`min_max_udafs`] wraps MIN and MAX so that float inputs use the per-group accumulator, which
//!   starts from NULL and gets infinities right; every other type keeps the grouped one.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::expr::AggregateFunctionParams;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, GroupsAccumulator, ReversedUDAF, SetMonotonicity,
    Signature, StatisticsArgs,
};

/// MIN or MAX, delegating everything to DataFusion's except the grouped accumulator for floats.
#[derive(Debug, PartialEq, Eq, Hash)]
struct FloatSafe(Arc<AggregateUDF>);

impl FloatSafe {
    fn inner(&self) -> &dyn AggregateUDFImpl {
        self.0.inner().as_ref()
    }
}

impl AggregateUDFImpl for FloatSafe {
    fn name(&self) -> &str {
        self.inner().name()
    }
    fn aliases(&self) -> &[String] {
        self.inner().aliases()
    }
    fn schema_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner().schema_name(params)
    }
    fn human_display(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner().human_display(params)
    }
    fn display_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner().display_name(params)
    }
    fn signature(&self) -> &Signature {
        self.inner().signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner().return_type(arg_types)
    }
    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.inner().return_field(arg_fields)
    }
    fn is_nullable(&self) -> bool {
        self.inner().is_nullable()
    }
    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.inner().accumulator(acc_args)
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.inner().state_fields(args)
    }
    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        !args.return_field.data_type().is_floating() && self.inner().groups_accumulator_supported(args)
    }
    fn create_groups_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        self.inner().create_groups_accumulator(args)
    }
    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.inner().create_sliding_accumulator(args)
    }
    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner().order_sensitivity()
    }
    fn reverse_expr(&self) -> ReversedUDAF {
        self.inner().reverse_expr()
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner().coerce_types(arg_types)
    }
    fn is_descending(&self) -> Option<bool> {
        self.inner().is_descending()
    }
    fn value_from_stats(&self, statistics_args: &StatisticsArgs) -> Option<ScalarValue> {
        self.inner().value_from_stats(statistics_args)
    }
    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.inner().default_value(data_type)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner().documentation()
    }
    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.inner().set_monotonicity(data_type)
    }
}

/// MIN and MAX to register in place of DataFusion's (see the module docs).
pub(crate) fn min_max_udafs() -> [Arc<AggregateUDF>; 2] {
    [datafusion::functions_aggregate::min_max::min_udaf(), datafusion::functions_aggregate::min_max::max_udaf()]
        .map(|f| Arc::new(AggregateUDF::new_from_impl(FloatSafe(f))))
}
