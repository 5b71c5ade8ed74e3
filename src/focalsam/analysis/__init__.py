"""focalsam.analysis"""
